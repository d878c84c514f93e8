//! apimctl CLI.
fn main() {}
