//! Integration tests: the real `carto` binary against a real server and PostgreSQL.

mod copy;
mod import;
mod interrupt;
mod misc;
mod support;
mod transfer;
mod transfer_hosts;
