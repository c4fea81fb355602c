//! Integration tests: the SDK against a real `carto-sql-api` server (in this process, on a
//! random port) over real HTTP, on a throwaway embedded PostgreSQL cluster.

mod batch;
mod big_upload;
mod blocking;
mod conformance;
mod copy_bench;
mod copy_errors;
mod copy_from;
mod copy_to;
mod examples;
mod parts;
mod retry;
mod rows;
mod sql;
mod support;
