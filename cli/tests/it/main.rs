//! The command's tests: its subcommands in process (train, explain, predict) and as the
//! installed binary (exit codes, output files, messages).

#[path = "../../../tests/it/common.rs"]
#[allow(dead_code)]
mod common;
#[path = "../../../examples/make_nodules.rs"]
#[allow(dead_code)]
mod make_nodules;

mod commands;
mod explain;
mod export;
mod predict;
mod train;
