//! Criterion benchmarks live in `micro/`; see `Cargo.toml`.
