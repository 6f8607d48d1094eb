//! End-to-end tests live in `tests/` of this crate; they start the real binaries. The library
//! holds what tests in several crates share: [`tools`] installs the PyPI and npm packages some
//! tests need, so `cargo test --workspace` passes on a machine that has only Python 3 with pip,
//! Node with npm and kubectl; [`fuzzing`] holds the fuzz targets that `fuzz/` runs and
//! `tests/fuzz_replay.rs` replays; [`localnet`] runs parties as real processes for the
//! `musig2-chaos` harness (`src/bin/chaos.rs`); [`sim`] is the deterministic simulator of the
//! coordinator's protocol cores (`tests/sim.rs`, `src/bin/sim.rs`).

pub mod fuzzing;
pub mod localnet;
pub mod sim;
pub mod tools;
