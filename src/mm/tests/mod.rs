//! Model-checked tests of the page-cache protocol (run with `RUSTFLAGS="--cfg loom"`).
