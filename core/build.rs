//! `sqlx::migrate!` embeds the migrations at compile time; without this, adding a migration
//! (a new file, no Rust change) would not rebuild the crate and the new migration would be
//! missing from the binary.
fn main() {
    println!("cargo:rerun-if-changed=../migrations");
}
