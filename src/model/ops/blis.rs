//! BLIS through its C interfaces: the CBLAS `?gemm` (BLIS picks its own path) and the typed expert
//! `bli_?gemm_ex` with runtime settings that switch the small-matrix path off (see `prefer_packed` in
//! [`super`]).

use cblas_sys::{CBLAS_LAYOUT, CBLAS_TRANSPOSE};

pub fn trans(t: bool) -> CBLAS_TRANSPOSE {
    if t {
        CBLAS_TRANSPOSE::CblasTrans
    } else {
        CBLAS_TRANSPOSE::CblasNoTrans
    }
}

pub const ROW_MAJOR: CBLAS_LAYOUT = CBLAS_LAYOUT::CblasRowMajor;

/// BLAS dimensions are C ints; every product here is far below 2³¹ per dimension.
pub fn int(v: usize) -> i32 {
    i32::try_from(v).expect("matrix dimension fits in an i32")
}

/// BLIS 0.9's runtime settings (`rntm_t` in `blis.h`, 88 bytes on 64-bit targets). Only used after
/// [`Runtime::packed`] has checked that the linked library is a 0.9 release, whose layout this is.
#[repr(C)]
pub struct Runtime {
    auto_factor: bool,
    num_threads: i64,
    thrloop: [i64; 6],
    pack_a: bool,
    pack_b: bool,
    l3_sup: bool,
    sba_pool: *mut std::ffi::c_void,
    pba: *mut std::ffi::c_void,
}

extern "C" {
    fn bli_info_get_version_str() -> *const std::ffi::c_char;
}

impl Runtime {
    /// `bli_rntm_init` with the small-matrix ("sup") path switched off, so that BLIS packs both
    /// operands and runs its large-matrix kernel; `None` when the linked BLIS is not a 0.9 release.
    pub fn packed() -> Option<Self> {
        static IS_0_9: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        let known = *IS_0_9.get_or_init(|| {
            // SAFETY: BLIS returns a static NUL-terminated string.
            let v = unsafe { std::ffi::CStr::from_ptr(bli_info_get_version_str()) };
            v.to_bytes().starts_with(b"0.9.")
        });
        known.then_some(Self {
            auto_factor: true,
            num_threads: -1,
            thrloop: [-1; 6],
            pack_a: false,
            pack_b: false,
            l3_sup: false,
            sba_pool: std::ptr::null_mut(),
            pba: std::ptr::null_mut(),
        })
    }
}

/// BLIS's typed expert interface (`bli_?gemm_ex`): general row and column strides, no transposes.
macro_rules! gemm_ex {
    ($name:ident, $t:ty) => {
        extern "C" {
            pub fn $name(
                transa: u32,
                transb: u32,
                m: i64,
                n: i64,
                k: i64,
                alpha: *const $t,
                a: *const $t,
                rsa: i64,
                csa: i64,
                b: *const $t,
                rsb: i64,
                csb: i64,
                beta: *const $t,
                c: *mut $t,
                rsc: i64,
                csc: i64,
                cntx: *const std::ffi::c_void,
                rntm: *mut Runtime,
            );
        }
    };
}
gemm_ex!(bli_sgemm_ex, f32);
gemm_ex!(bli_dgemm_ex, f64);

/// (row stride, column stride) of an operand as read.
pub fn strides(ld: usize, trans: bool) -> (i64, i64) {
    let ld = ld.max(1) as i64;
    if trans {
        (1, ld)
    } else {
        (ld, 1)
    }
}
