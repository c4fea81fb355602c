//! Integration tests: the real `carto` binary against a real server and PostgreSQL.

mod copy;
mod import;
mod misc;
mod support;
mod transfer;
