//! The few system calls both stages make, with Rust strings.

use std::ffi::CString;

/// A C string; a string with a NUL in it (never one of ours) becomes empty.
pub fn cstr(s: &str) -> CString {
    CString::new(s).unwrap_or_default()
}

/// mount(2); an empty `fstype` is passed as none (MS_MOVE, MS_REMOUNT).
pub fn mount(
    src: &str,
    target: &str,
    fstype: &str,
    flags: libc::c_ulong,
    data: &str,
) -> std::io::Result<()> {
    let (s, t, f, d) = (cstr(src), cstr(target), cstr(fstype), cstr(data));
    // SAFETY: live NUL-terminated strings, or null for no fstype.
    let rc = unsafe {
        libc::mount(
            s.as_ptr(),
            t.as_ptr(),
            if fstype.is_empty() {
                std::ptr::null()
            } else {
                f.as_ptr()
            },
            flags,
            d.as_ptr().cast(),
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}
