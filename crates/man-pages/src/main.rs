//! `http-nbd-transfer-man-pages DIR`: writes every man page under DIR
//! (`DIR/man1/nbdkit-multihttp-plugin.1`, ...) and prints each path.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let dir = match args.as_slice() {
        [flag] if flag == "-h" || flag == "--help" => {
            println!(
                "Usage: http-nbd-transfer-man-pages DIR\nWrites the man pages as DIR/manN/NAME.N."
            );
            return ExitCode::SUCCESS;
        }
        [dir] if !dir.starts_with('-') => PathBuf::from(dir),
        _ => {
            eprintln!("usage: http-nbd-transfer-man-pages DIR");
            return ExitCode::from(2);
        }
    };
    for page in man_pages::all() {
        if let Err(e) = write(&dir, &page) {
            eprintln!("http-nbd-transfer-man-pages: {e}");
            return ExitCode::FAILURE;
        }
    }
    ExitCode::SUCCESS
}

fn write(dir: &Path, page: &man_pages::ManPage) -> Result<(), String> {
    let path = dir.join(page.relative_path());
    let parent = path.parent().expect("a relative path with a directory");
    std::fs::create_dir_all(parent)
        .map_err(|e| format!("cannot create {}: {e}", parent.display()))?;
    std::fs::write(&path, &page.text)
        .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    println!("{}", path.display());
    Ok(())
}
