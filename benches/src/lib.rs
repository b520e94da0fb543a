//! Criterion benchmarks live in `micro/`; see `Cargo.toml`.

#![forbid(unsafe_code)]
