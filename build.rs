//! Two jobs:
//!
//! - Links BLIS statically for the CPU matrix products when it finds Debian's single-threaded build
//!   (`libblis-serial-dev`: `/usr/lib/<triple>/blis-serial/libblis.a`, or the directory in `SKILLGRAFT_BLIS_DIR`)
//!   and sets `cfg(skillgraft_blis)`; otherwise the `gemm` crate does the products (a warning says so).
//!   `SKILLGRAFT_BLIS_DIR=none` forces the `gemm` crate.
//! - With the `cuda` feature, compiles `src/model/ops/kernels.cu` to PTX for `CUDA_COMPUTE_CAP` (default 90)
//!   with the `nvcc` found through `NVCC`, `CUDA_ROOT`/`CUDA_PATH`, or `PATH`.

use std::path::PathBuf;
use std::process::Command;

/// The directory holding a single-threaded static BLIS, if there is one.
fn blis_dir() -> Option<PathBuf> {
    println!("cargo:rerun-if-env-changed=SKILLGRAFT_BLIS_DIR");
    let candidates: Vec<PathBuf> = match std::env::var("SKILLGRAFT_BLIS_DIR") {
        Ok(v) if v == "none" => return None,
        Ok(v) => vec![PathBuf::from(v)],
        Err(_) => {
            let arch = std::env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_default();
            let os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
            if os != "linux" {
                return None;
            }
            vec![PathBuf::from(format!(
                "/usr/lib/{arch}-linux-gnu/blis-serial"
            ))]
        }
    };
    candidates
        .into_iter()
        .find(|d| d.join("libblis.a").is_file())
}

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo::rustc-check-cfg=cfg(skillgraft_blis)");
    match blis_dir() {
        Some(dir) => {
            println!("cargo:rerun-if-changed={}", dir.join("libblis.a").display());
            println!("cargo:rustc-link-search=native={}", dir.display());
            println!("cargo:rustc-link-lib=static=blis");
            println!("cargo:rustc-cfg=skillgraft_blis");
        }
        None => println!(
            "cargo:warning=BLIS not found (Debian: apt-get install libblis-serial-dev, or set \
             SKILLGRAFT_BLIS_DIR): CPU matrix products use the gemm crate, which is slower on small batches"
        ),
    }
    println!("cargo:rerun-if-changed=src/model/ops/kernels.cu");
    for v in ["NVCC", "CUDA_ROOT", "CUDA_PATH", "CUDA_COMPUTE_CAP"] {
        println!("cargo:rerun-if-env-changed={v}");
    }
    if std::env::var_os("CARGO_FEATURE_CUDA").is_none() {
        return;
    }
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    let root = std::env::var("CUDA_ROOT")
        .or_else(|_| std::env::var("CUDA_PATH"))
        .ok()
        .map(PathBuf::from);
    let nvcc = std::env::var("NVCC")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            root.as_ref()
                .map(|r| r.join("bin").join("nvcc"))
                .filter(|p| p.exists())
                .unwrap_or_else(|| PathBuf::from("nvcc"))
        });
    let cap = std::env::var("CUDA_COMPUTE_CAP").unwrap_or_else(|_| "90".into());
    let cap: String = cap.chars().filter(|c| c.is_ascii_digit()).collect();
    let mut cmd = Command::new(&nvcc);
    cmd.args(["--ptx", "-O3", "-std=c++17"])
        .arg(format!("-arch=compute_{cap}"))
        .arg("src/model/ops/kernels.cu")
        .arg("-o")
        .arg(out.join("kernels.ptx"));
    if let Some(r) = &root {
        cmd.arg(format!("-I{}", r.join("include").display()));
    }
    let status = cmd.status().unwrap_or_else(|e| {
        panic!(
            "cannot run nvcc ({}): {e}; set CUDA_ROOT or NVCC, or use scripts/build-cuda.sh",
            nvcc.display()
        )
    });
    assert!(
        status.success(),
        "nvcc failed to compile src/model/ops/kernels.cu"
    );
}
