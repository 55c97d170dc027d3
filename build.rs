//! With the `cuda` feature, compiles `src/model/ops/kernels.cu` to PTX for `CUDA_COMPUTE_CAP` (default 90)
//! with the `nvcc` found through `NVCC`, `CUDA_ROOT`/`CUDA_PATH`, or `PATH`. Without the feature it does nothing.

use std::path::PathBuf;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
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
