//! One integration test binary (one link step): each area is a module, all of them drive a
//! real server on a real loopback socket.

mod util;

mod admin;
mod bench;

mod interop;
mod interop_cli;
mod protocol;
mod restart;
