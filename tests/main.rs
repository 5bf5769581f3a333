//! One integration test binary (one link step): each area is a module, all of them drive a
//! real server on a real loopback socket.

mod util;

mod admin;
mod auth;
mod auth_cli;
mod bench;
mod crash;
mod gc;
mod gc_cli;

mod interop;
mod interop_auth;
mod interop_cli;
mod memory;
mod ops;
mod powercut;
mod powercut_fs;
mod protocol;
mod refcount;
mod restart;
mod secrets;
mod sparse;
mod spec;
