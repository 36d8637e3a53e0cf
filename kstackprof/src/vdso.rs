//! The vDSO as a file, so that `[vdso]` frames get names: every 64-bit
//! process maps the same image (the kernel's), so ours serves for all. It
//! is copied out of our own memory (`/proc/self/mem`) into a temporary
//! file, which blazesym reads like any ELF file; removed on drop.

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// Our vDSO image, in a temporary file.
pub struct VdsoFile(PathBuf);

impl VdsoFile {
    /// Copies our `[vdso]` mapping into a file; `None` when there is none.
    pub fn create() -> Option<VdsoFile> {
        let maps = std::fs::read_to_string("/proc/self/maps").ok()?;
        let line = maps.lines().find(|l| l.ends_with("[vdso]"))?;
        let (a, b) = line.split_whitespace().next()?.split_once('-')?;
        let start = u64::from_str_radix(a, 16).ok()?;
        let end = u64::from_str_radix(b, 16).ok()?;
        let mut image = vec![0u8; usize::try_from(end.checked_sub(start)?).ok()?];
        std::fs::File::open("/proc/self/mem")
            .ok()?
            .read_exact_at(&mut image, start)
            .ok()?;
        let path = std::env::temp_dir().join(format!("kstackprof-vdso-{}.so", std::process::id()));
        std::fs::write(&path, image).ok()?;
        Some(VdsoFile(path))
    }

    /// Where the copy is.
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for VdsoFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn our_vdso_is_an_elf_file() {
        let Some(v) = VdsoFile::create() else {
            println!("SKIPPED: no [vdso] mapping here");
            return;
        };
        let bytes = std::fs::read(v.path()).unwrap();
        assert_eq!(&bytes[..4], b"\x7fELF");
        let p = v.path().to_path_buf();
        drop(v);
        assert!(!p.exists());
    }
}
