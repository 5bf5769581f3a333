//! Who may do what. `users` and `token` are pure (names, passwords, patterns, policy; bearer
//! tokens); `access` holds the users and grants of a running instance and the snapshot that
//! requests consult. The request side (Basic, Bearer, the token endpoint) is `http::auth`,
//! since only `http` knows warp.

pub mod access;
pub mod token;
pub mod users;
