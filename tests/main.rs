//! One integration test binary (one link step): each area is a module, all of them drive a
//! real server on a real loopback socket.

mod util;

mod admin;
mod auth;
mod auth_cli;
mod backup;
mod bench;
mod crash;
mod distribution;
mod gc;
mod gc_cli;
mod hostile;

mod interop;
mod interop_auth;
mod interop_cli;
mod layout;
mod memory;
mod migrate;
mod mirror;
mod mirror_clients;
mod ops;
mod policy;
mod powercut;
mod powercut_fs;
mod protocol;
mod refcount;
mod restart;
mod s3;
mod s3_cluster;
mod secrets;
mod sparse;
mod spec;
mod ui;
mod ui_cli;
mod webhooks;
mod workflow;
