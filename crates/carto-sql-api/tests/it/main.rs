//! Integration tests: a real embedded PostgreSQL cluster and the server on real HTTP.

mod accounts;
mod cartodb;
mod cli;
mod copy_from;
mod copy_to;
mod export;
mod hosts;
mod identity;
mod jobs;
mod keys;
mod limits;
mod odd_input;
mod outage;
mod role_self_changes;
mod security;
mod slow_clients;
mod sql;
mod starvation;
mod support;
mod user_move;
