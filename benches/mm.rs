//! Criterion benchmarks of the page-cache hot paths (filled in below).
fn main() {}
