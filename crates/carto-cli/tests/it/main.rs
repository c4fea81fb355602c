//! Integration tests: the real `carto` binary against a real server and PostgreSQL.

mod copy;
mod export;
mod import;
mod import_geojson;
mod interrupt;
mod misc;
mod parts;
mod sql;
mod support;
mod transfer;
mod transfer_hosts;
