//! Build script: compiles kaji's sandbox ("pause") program, `embedded/pause/pause.c`, into
//! a tiny static executable for the target architecture. The agent embeds it with
//! `include_bytes!` and builds the pause image from it at run time, so pods can start
//! without any registry.
//!
//! The compiler is `$CC_<target>`, `$TARGET_CC` or `$CC` when set, else `cc` when building
//! for the host architecture, else `<arch>-linux-gnu-gcc`. No libc is needed: the
//! program makes raw system calls.

use std::path::PathBuf;
use std::process::Command;

fn main() {
    let source = "embedded/pause/pause.c";
    println!("cargo:rerun-if-changed={source}");
    println!("cargo:rerun-if-changed=build.rs");
    let target = std::env::var("TARGET").unwrap_or_default();
    let host = std::env::var("HOST").unwrap_or_default();
    let arch = std::env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_default();
    let os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    let target_env = format!("CC_{}", target.replace('-', "_"));
    for var in [target_env.as_str(), "TARGET_CC", "CC"] {
        println!("cargo:rerun-if-env-changed={var}");
    }
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR")).join("pause");

    if os != "linux" || !matches!(arch.as_str(), "x86_64" | "aarch64") {
        // kaji's node agent runs on Linux x86_64 and aarch64 only; elsewhere embed an
        // empty program so the rest of the crate still builds (the agent refuses to use it).
        println!(
            "cargo:warning=the pause program supports Linux x86_64 and aarch64 only; not building it for {target}"
        );
        std::fs::write(&out, b"").expect("writing OUT_DIR/pause");
        return;
    }

    let compiler = [target_env.as_str(), "TARGET_CC"]
        .iter()
        .find_map(|v| std::env::var(v).ok())
        .or_else(|| (target == host).then(|| std::env::var("CC").ok()).flatten())
        .unwrap_or_else(|| {
            if target == host {
                "cc".to_string()
            } else {
                format!("{arch}-linux-gnu-gcc")
            }
        });

    let status = Command::new(&compiler)
        .args([
            "-Os",
            "-static",
            "-nostdlib",
            "-ffreestanding",
            "-fno-stack-protector",
            "-fno-pie",
            "-no-pie",
            "-fno-asynchronous-unwind-tables",
            "-fno-unwind-tables",
            "-Wall",
            "-Wextra",
            "-Werror",
            "-Wl,--build-id=none",
            "-Wl,--gc-sections",
            "-Wl,-z,noseparate-code",
            "-Wl,-z,norelro",
            "-s",
            "-o",
        ])
        .arg(&out)
        .arg(source)
        .status();
    match status {
        Ok(s) if s.success() => {}
        Ok(s) => panic!(
            "compiling {source} with `{compiler}` failed ({s}); kaji embeds this program as its pause image"
        ),
        Err(e) => panic!(
            "cannot run the C compiler `{compiler}` to build {source}: {e}.\n\
             kaji embeds a tiny static pause program compiled at build time: install gcc \
             (Debian: `apt-get install gcc`, or run scripts/setup.sh), or point CC at a C \
             compiler for {target}"
        ),
    }
}
