//! Builds the eBPF programs (`leaktrace-ebpf`, target bpfel-unknown-none) into OUT_DIR with the
//! workspace's pinned toolchain. `cargo xtask setup` installs what this needs (rust-src,
//! bpf-linker built against that toolchain's LLVM).
use anyhow::{anyhow, Context as _};

/// The toolchain pinned in rust-toolchain.toml; the eBPF build must use the LLVM that
/// bpf-linker was built against.
const EBPF_TOOLCHAIN: &str = "1.95.0";

fn main() -> anyhow::Result<()> {
    let metadata = cargo_metadata::MetadataCommand::new()
        .no_deps()
        .exec()
        .context("cargo metadata")?;
    let ebpf = metadata
        .packages
        .into_iter()
        .find(|p| p.name.as_str() == "leaktrace-ebpf")
        .ok_or_else(|| anyhow!("leaktrace-ebpf package not found"))?;
    let root_dir = ebpf
        .manifest_path
        .parent()
        .ok_or_else(|| anyhow!("no parent for {}", ebpf.manifest_path))?
        .to_string();
    // Stable toolchain + rust-src: -Z build-std=core needs RUSTC_BOOTSTRAP for the inner build.
    // SAFETY (edition 2021: safe fn): build scripts are single-threaded here.
    std::env::set_var("RUSTC_BOOTSTRAP", "1");
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "leaktrace-ebpf",
            root_dir: &root_dir,
            ..Default::default()
        }],
        aya_build::Toolchain::Custom(EBPF_TOOLCHAIN),
    )
}
