//! Lists `migrations/*.sql` for `store::migrations` (the SQL embedded with `include_str!`), so
//! that sqlx's `migrate!` macro, and with it the `macros` feature that compiles sqlx and a
//! second bundled SQLite for the host, is not needed.

use std::fmt::Write as _;
use std::path::Path;

fn main() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations");
    println!("cargo:rerun-if-changed={}", dir.display());
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .expect("read migrations/")
        .map(|entry| entry.expect("read migrations/").path())
        .filter(|path| path.is_file() && path.extension().is_some_and(|e| e == "sql"))
        .collect();
    files.sort();
    let mut out = String::from("&[\n");
    for path in files {
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .expect("UTF-8 name");
        println!("cargo:rerun-if-changed={}", path.display());
        writeln!(out, "    ({name:?}, include_str!({:?})),", path.display()).expect("write");
    }
    out.push(']');
    let out_dir = std::env::var("OUT_DIR").expect("OUT_DIR");
    std::fs::write(Path::new(&out_dir).join("migrations.rs"), out).expect("write migrations.rs");
}
