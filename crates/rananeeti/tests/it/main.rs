//! The integration tests of the `rananeeti` binary crate, built into one test binary.

mod postgres;
