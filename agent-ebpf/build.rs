use which::which;

/// Rebuild when bpf-linker changes (aya's template does the same).
fn main() {
    let bpf_linker = which("bpf-linker").unwrap_or_default();
    println!("cargo:rerun-if-changed={}", bpf_linker.display());
}
