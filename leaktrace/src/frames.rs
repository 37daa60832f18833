//! Which frames of a stack are the user's code and which belong to the C library, the
//! allocator or a language runtime. One table of patterns decides it for every caller: which
//! libc to hook, which leading frames of a growth stack to skip, which frame names a site,
//! which frames the dashboard dims.
use crate::schema::Frame;

/// What a frame is, from the user's point of view.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrameClass {
    /// The C library (glibc, or musl, whose libc is also its dynamic loader).
    Libc,
    /// A function of the malloc family, or a wrapper whose only job is to call it
    /// (`operator new`, `CRYPTO_malloc`, `g_malloc`, ...): never the place that leaks.
    Allocator,
    /// A language runtime or the dynamic loader (ld.so, libstdc++ internals, the Go runtime).
    Runtime,
    /// Everything else: the program and its libraries.
    User,
}

impl FrameClass {
    /// Whether a user reading a stack looks here first.
    pub fn is_user(self) -> bool {
        self == FrameClass::User
    }
}

/// How a pattern matches a name.
#[derive(Clone, Copy, Debug)]
enum Pattern {
    Exact(&'static str),
    Prefix(&'static str),
    /// Starts with the first string and contains the second after it (`libc-2.31.so`).
    PrefixContaining(&'static str, &'static str),
    /// Contains the string anywhere (`main._Cfunc_malloc`, whatever the package path).
    Contains(&'static str),
}

impl Pattern {
    fn matches(self, name: &str) -> bool {
        match self {
            Pattern::Exact(exact) => name == exact,
            Pattern::Prefix(prefix) => name.starts_with(prefix),
            Pattern::PrefixContaining(prefix, inner) => name
                .strip_prefix(prefix)
                .is_some_and(|rest| rest.contains(inner)),
            Pattern::Contains(inner) => name.contains(inner),
        }
    }
}

/// Module file names (the path's last component), first match wins.
const MODULES: &[(Pattern, FrameClass)] = &[
    (Pattern::Prefix("libc.so"), FrameClass::Libc),
    (Pattern::PrefixContaining("libc-", ".so"), FrameClass::Libc),
    (Pattern::Prefix("ld-musl-"), FrameClass::Libc),
    (Pattern::Prefix("libc.musl-"), FrameClass::Libc),
    (Pattern::Prefix("ld-linux"), FrameClass::Runtime),
    (Pattern::Prefix("ld.so"), FrameClass::Runtime),
    (Pattern::PrefixContaining("ld-", ".so"), FrameClass::Runtime),
    (Pattern::Prefix("libstdc++.so"), FrameClass::Runtime),
    (Pattern::Prefix("libgcc_s.so"), FrameClass::Runtime),
    (Pattern::Prefix("libjemalloc.so"), FrameClass::Allocator),
    (Pattern::Prefix("libtcmalloc"), FrameClass::Allocator),
    (Pattern::Prefix("libmimalloc.so"), FrameClass::Allocator),
];

/// Function names (demangled), first match wins. They decide before the module does: a
/// static binary holds its allocator and its runtime, and `operator new` lives in libstdc++.
///
/// This is THE list of allocator plumbing (docs/architecture.md, "Frames and labels"): a frame
/// classed `Allocator` or `Runtime` is never where a label starts. Add a wrapper here, with a
/// case in the tests below, and every view (table, dashboard, report, diff, exports, call
/// trees) skips it.
const FUNCTIONS: &[(Pattern, FrameClass)] = &[
    // libc's allocator, and glibc's internals behind it.
    (Pattern::Exact("malloc"), FrameClass::Allocator),
    (Pattern::Exact("calloc"), FrameClass::Allocator),
    (Pattern::Exact("realloc"), FrameClass::Allocator),
    (Pattern::Exact("reallocarray"), FrameClass::Allocator),
    (Pattern::Exact("free"), FrameClass::Allocator),
    (Pattern::Exact("posix_memalign"), FrameClass::Allocator),
    (Pattern::Exact("aligned_alloc"), FrameClass::Allocator),
    (Pattern::Exact("memalign"), FrameClass::Allocator),
    (Pattern::Exact("valloc"), FrameClass::Allocator),
    (Pattern::Exact("pvalloc"), FrameClass::Allocator),
    (Pattern::Prefix("__libc_malloc"), FrameClass::Allocator),
    (Pattern::Prefix("__libc_calloc"), FrameClass::Allocator),
    (Pattern::Prefix("__libc_realloc"), FrameClass::Allocator),
    (Pattern::Prefix("__libc_memalign"), FrameClass::Allocator),
    (Pattern::Prefix("__libc_free"), FrameClass::Allocator),
    (Pattern::Prefix("__GI___libc_malloc"), FrameClass::Allocator),
    (
        Pattern::Prefix("__GI___libc_realloc"),
        FrameClass::Allocator,
    ),
    (Pattern::Prefix("__GI___libc_free"), FrameClass::Allocator),
    (Pattern::Prefix("_int_"), FrameClass::Allocator),
    (Pattern::Prefix("_mid_memalign"), FrameClass::Allocator),
    (Pattern::Exact("sysmalloc"), FrameClass::Allocator),
    (Pattern::Prefix("tcache_"), FrameClass::Allocator),
    (Pattern::Exact("malloc_consolidate"), FrameClass::Allocator),
    (Pattern::Exact("ptmalloc_init"), FrameClass::Allocator),
    // C++ `operator new`/`delete`, demangled or not (`_Znwm`, `_ZnamRKSt9nothrow_t`,
    // `_ZnwmSt11align_val_t`, ...).
    (Pattern::Prefix("operator new"), FrameClass::Allocator),
    (Pattern::Prefix("operator delete"), FrameClass::Allocator),
    (Pattern::Prefix("_Znw"), FrameClass::Allocator),
    (Pattern::Prefix("_Zna"), FrameClass::Allocator),
    (Pattern::Prefix("_Zdl"), FrameClass::Allocator),
    (Pattern::Prefix("_Zda"), FrameClass::Allocator),
    // OpenSSL (its OPENSSL_malloc/zalloc/... macros resolve to these).
    (Pattern::Prefix("CRYPTO_malloc"), FrameClass::Allocator),
    (Pattern::Prefix("CRYPTO_zalloc"), FrameClass::Allocator),
    (Pattern::Prefix("CRYPTO_realloc"), FrameClass::Allocator),
    (
        Pattern::Prefix("CRYPTO_clear_realloc"),
        FrameClass::Allocator,
    ),
    (Pattern::Prefix("CRYPTO_memdup"), FrameClass::Allocator),
    (Pattern::Prefix("CRYPTO_strdup"), FrameClass::Allocator),
    (Pattern::Prefix("CRYPTO_strndup"), FrameClass::Allocator),
    (
        Pattern::Prefix("CRYPTO_secure_malloc"),
        FrameClass::Allocator,
    ),
    (
        Pattern::Prefix("CRYPTO_secure_zalloc"),
        FrameClass::Allocator,
    ),
    (Pattern::Prefix("CRYPTO_free"), FrameClass::Allocator),
    (Pattern::Prefix("CRYPTO_clear_free"), FrameClass::Allocator),
    (Pattern::Prefix("BUF_MEM_grow"), FrameClass::Allocator),
    // GLib (g_new/g_new0 are macros over g_malloc_n/g_malloc0_n).
    (Pattern::Prefix("g_malloc"), FrameClass::Allocator),
    (Pattern::Prefix("g_realloc"), FrameClass::Allocator),
    (Pattern::Prefix("g_try_malloc"), FrameClass::Allocator),
    (Pattern::Prefix("g_try_realloc"), FrameClass::Allocator),
    (Pattern::Prefix("g_slice_alloc"), FrameClass::Allocator),
    // xmalloc-style helpers (gnulib, GNU tools, many C programs).
    (Pattern::Exact("xmalloc"), FrameClass::Allocator),
    (Pattern::Exact("xzalloc"), FrameClass::Allocator),
    (Pattern::Exact("xcalloc"), FrameClass::Allocator),
    (Pattern::Exact("xrealloc"), FrameClass::Allocator),
    (Pattern::Exact("xreallocarray"), FrameClass::Allocator),
    (Pattern::Exact("xnmalloc"), FrameClass::Allocator),
    (Pattern::Exact("xnrealloc"), FrameClass::Allocator),
    (Pattern::Exact("x2nrealloc"), FrameClass::Allocator),
    (Pattern::Exact("xstrdup"), FrameClass::Allocator),
    (Pattern::Exact("xstrndup"), FrameClass::Allocator),
    (Pattern::Exact("xmemdup"), FrameClass::Allocator),
    (Pattern::Exact("xcharalloc"), FrameClass::Allocator),
    // Applications' own allocators that the project traces: nginx (ngx_alloc, its pools),
    // Redis (zmalloc), CPython (PyMem, pymalloc).
    (Pattern::Exact("ngx_alloc"), FrameClass::Allocator),
    (Pattern::Exact("ngx_calloc"), FrameClass::Allocator),
    (Pattern::Exact("ngx_memalign"), FrameClass::Allocator),
    (Pattern::Prefix("ngx_palloc"), FrameClass::Allocator),
    (Pattern::Exact("ngx_pnalloc"), FrameClass::Allocator),
    (Pattern::Exact("ngx_pcalloc"), FrameClass::Allocator),
    (Pattern::Exact("ngx_pmemalign"), FrameClass::Allocator),
    (Pattern::Exact("ngx_create_pool"), FrameClass::Allocator),
    (Pattern::Prefix("zmalloc"), FrameClass::Allocator),
    (Pattern::Prefix("zcalloc"), FrameClass::Allocator),
    (Pattern::Prefix("zrealloc"), FrameClass::Allocator),
    (Pattern::Prefix("ztry"), FrameClass::Allocator),
    (Pattern::Prefix("PyMem_"), FrameClass::Allocator),
    (Pattern::Prefix("_PyMem_"), FrameClass::Allocator),
    (Pattern::Prefix("PyObject_Malloc"), FrameClass::Allocator),
    (Pattern::Prefix("PyObject_Calloc"), FrameClass::Allocator),
    (Pattern::Prefix("PyObject_Realloc"), FrameClass::Allocator),
    (Pattern::Prefix("_PyObject_Malloc"), FrameClass::Allocator),
    (Pattern::Prefix("pymalloc_"), FrameClass::Allocator),
    // jemalloc, tcmalloc, mimalloc entry points (static builds; their libraries are classed by
    // module below).
    (Pattern::Prefix("je_"), FrameClass::Allocator),
    (Pattern::Exact("mallocx"), FrameClass::Allocator),
    (Pattern::Exact("rallocx"), FrameClass::Allocator),
    (Pattern::Exact("xallocx"), FrameClass::Allocator),
    (Pattern::Prefix("tc_"), FrameClass::Allocator),
    (Pattern::Prefix("tcmalloc::"), FrameClass::Allocator),
    (Pattern::Prefix("mi_"), FrameClass::Allocator),
    (Pattern::Prefix("_mi_"), FrameClass::Allocator),
    // Rust's global allocator shims.
    (Pattern::Prefix("__rust_alloc"), FrameClass::Allocator),
    (Pattern::Prefix("__rust_realloc"), FrameClass::Allocator),
    (Pattern::Prefix("__rdl_"), FrameClass::Allocator),
    (Pattern::Prefix("__rg_"), FrameClass::Allocator),
    (Pattern::Prefix("alloc::alloc::"), FrameClass::Allocator),
    (Pattern::Prefix("alloc::raw_vec::"), FrameClass::Allocator),
    // The Go runtime's allocation path.
    (Pattern::Prefix("runtime.mallocgc"), FrameClass::Allocator),
    (Pattern::Exact("runtime.newobject"), FrameClass::Allocator),
    (Pattern::Exact("runtime.newarray"), FrameClass::Allocator),
    (Pattern::Exact("runtime.makeslice"), FrameClass::Allocator),
    (Pattern::Exact("runtime.growslice"), FrameClass::Allocator),
    (Pattern::Prefix("runtime.makemap"), FrameClass::Allocator),
    (Pattern::Prefix("runtime.mapassign"), FrameClass::Allocator),
    (Pattern::Prefix("runtime.rawstring"), FrameClass::Allocator),
    (
        Pattern::Prefix("runtime.rawbyteslice"),
        FrameClass::Allocator,
    ),
    (
        Pattern::Prefix("runtime.concatstring"),
        FrameClass::Allocator,
    ),
    (
        Pattern::Exact("runtime.slicebytetostring"),
        FrameClass::Allocator,
    ),
    (
        Pattern::Exact("runtime.stringtoslicebyte"),
        FrameClass::Allocator,
    ),
    (Pattern::Exact("runtime.systemstack"), FrameClass::Runtime),
    (Pattern::Prefix("runtime.(*mheap)."), FrameClass::Allocator),
    (Pattern::Prefix("runtime.(*mcache)."), FrameClass::Allocator),
    (
        Pattern::Prefix("runtime.(*mcentral)."),
        FrameClass::Allocator,
    ),
    (Pattern::Prefix("runtime.sysAlloc"), FrameClass::Allocator),
    (Pattern::Prefix("runtime.sysMap"), FrameClass::Allocator),
    (Pattern::Prefix("runtime.sysMmap"), FrameClass::Allocator),
    (Pattern::Prefix("runtime.sysUsed"), FrameClass::Allocator),
    (
        Pattern::Prefix("runtime.persistentalloc"),
        FrameClass::Allocator,
    ),
    // cgo trampolines, then the rest of the Go runtime.
    (Pattern::Prefix("_cgo_"), FrameClass::Runtime),
    // The Go side of a cgo call (`main._Cfunc_foo`, `example.com/pkg._Cfunc__CMalloc`).
    (Pattern::Contains("._Cfunc_"), FrameClass::Runtime),
    (Pattern::Prefix("x_cgo_"), FrameClass::Runtime),
    (Pattern::Exact("crosscall2"), FrameClass::Runtime),
    (Pattern::Prefix("runtime.asmcgocall"), FrameClass::Runtime),
    (Pattern::Prefix("runtime.cgocall"), FrameClass::Runtime),
    (Pattern::Prefix("runtime."), FrameClass::Runtime),
    (Pattern::Prefix("internal/runtime/"), FrameClass::Runtime),
    // The loader, program start-up and C++ library internals.
    (Pattern::Prefix("_dl_"), FrameClass::Runtime),
    (Pattern::Prefix("__libc_start"), FrameClass::Runtime),
    (Pattern::Exact("_start"), FrameClass::Runtime),
    (Pattern::Prefix("std::__"), FrameClass::Runtime),
    (Pattern::Prefix("__gnu_cxx::"), FrameClass::Runtime),
];

/// Directories of libraries the system shipped (the distribution's OpenSSL, GLib, ...). A shared
/// object under one of them is a library the user's code calls, not the user's code: a label
/// skips it to reach the user's frame, and names the library function entered with `via`.
const SYSTEM_LIBRARY_DIRS: &[&str] = &[
    "/lib/",
    "/lib32/",
    "/lib64/",
    "/usr/lib/",
    "/usr/lib32/",
    "/usr/lib64/",
];

/// The last path component of `path` (all of it when there is no `/`).
pub fn basename(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

fn lookup(table: &[(Pattern, FrameClass)], name: &str) -> Option<FrameClass> {
    table
        .iter()
        .find(|(pattern, _)| pattern.matches(name))
        .map(|(_, class)| *class)
}

/// What the module at `path` holds; `User` when no pattern matches.
pub fn module_class(path: &str) -> FrameClass {
    lookup(MODULES, basename(path)).unwrap_or(FrameClass::User)
}

/// Whether `path` is the C library: the library leaktrace hooks, and whose frames lead every
/// stack that a heap syscall made on behalf of malloc.
pub fn is_libc(path: &str) -> bool {
    module_class(path) == FrameClass::Libc
}

/// A frame's class from its function name and its module, either of which may be unknown:
/// a frame with neither is the user's (nothing says otherwise).
pub fn classify(function: Option<&str>, module: Option<&str>) -> FrameClass {
    function
        .and_then(|f| lookup(FUNCTIONS, f))
        .or_else(|| module.and_then(|m| lookup(MODULES, basename(m))))
        .unwrap_or(FrameClass::User)
}

/// The fields every view names a frame by, for live frames and recorded ones alike.
pub trait StackFrame {
    fn function(&self) -> Option<&str>;
    fn module(&self) -> Option<&str>;
    /// Offset in the module: stable across runs of the same build.
    fn offset(&self) -> Option<u64>;
    fn addr(&self) -> Option<u64>;
    fn file(&self) -> Option<&str>;
    fn line(&self) -> Option<u32>;

    fn class(&self) -> FrameClass {
        classify(self.function(), self.module())
    }
}

/// Live and recorded frames have the same fields; only the address is optional in a
/// recorded one.
macro_rules! impl_stack_frame {
    ($frame:ty, |$f:ident| $addr:expr) => {
        impl $crate::frames::StackFrame for $frame {
            fn function(&self) -> Option<&str> {
                self.function.as_deref()
            }
            fn module(&self) -> Option<&str> {
                self.module.as_deref()
            }
            fn offset(&self) -> Option<u64> {
                self.offset
            }
            fn addr(&self) -> Option<u64> {
                let $f = self;
                $addr
            }
            fn file(&self) -> Option<&str> {
                self.file.as_deref()
            }
            fn line(&self) -> Option<u32> {
                self.line
            }
        }
    };
}

// The post-mortem reader implements it for its recorded frames (it depends on this module,
// not the other way round).
pub(crate) use impl_stack_frame;

impl_stack_frame!(Frame, |f| Some(f.addr));

/// Whether a module is a shared object installed in a system library directory.
pub fn is_system_library(path: &str) -> bool {
    SYSTEM_LIBRARY_DIRS.iter().any(|dir| path.starts_with(dir)) && basename(path).contains(".so")
}

/// How a label treats a frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LabelTier {
    /// The allocator, its wrappers, the runtimes and the loader ([`FrameClass::Allocator`] and
    /// [`FrameClass::Runtime`]): never where a label starts.
    Plumbing,
    /// The C library and the system's other shared libraries: named with `via`, skipped when a
    /// frame of the program itself is further out.
    Library,
    /// The program and the libraries the user built.
    Program,
}

/// A frame's tier for labels: the class first, then where its module is installed.
pub fn label_tier<F: StackFrame>(frame: &F) -> LabelTier {
    match frame.class() {
        FrameClass::Allocator | FrameClass::Runtime => LabelTier::Plumbing,
        FrameClass::Libc => LabelTier::Library,
        FrameClass::User if frame.module().is_some_and(is_system_library) => LabelTier::Library,
        FrameClass::User => LabelTier::Program,
    }
}

/// Whether a frame is allocator plumbing (see [`LabelTier::Plumbing`]).
pub fn is_plumbing<F: StackFrame>(frame: &F) -> bool {
    label_tier(frame) == LabelTier::Plumbing
}

/// Which frames a site's one-line label shows, as indexes into its frames (innermost first).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LabelFrames {
    /// The frame the label starts with.
    pub lead: usize,
    /// The library function the lead frame called on the way to the allocator, when the lead
    /// did not call the plumbing itself (`verify_request (app.c:14) via X509_STORE_CTX_new`).
    pub via: Option<usize>,
}

/// The frames that name a stack, by one rule (docs/architecture.md, "Frames and labels"):
///
/// 1. the lead is the innermost frame of the program (neither plumbing nor a system library),
///    preferring one that has a name or a module over a bare address;
/// 2. `via` is the frame just inside the lead when that frame is a library's (the API the
///    program entered); when the lead called plumbing directly, there is no `via`;
/// 3. without a program frame, the lead is the innermost library frame, without `via`;
/// 4. when every frame is plumbing, the lead is the innermost frame that is not the allocator
///    itself (the runtime code that asked for memory), else the innermost frame.
///
/// `None` for an empty stack.
pub fn label_frames<F: StackFrame>(frames: &[F]) -> Option<LabelFrames> {
    if frames.is_empty() {
        return None;
    }
    let tiers: Vec<LabelTier> = frames.iter().map(label_tier).collect();
    let program = |i: usize| tiers[i] == LabelTier::Program;
    let known = |i: usize| frames[i].function().is_some() || frames[i].module().is_some();
    let lead = (0..frames.len())
        .find(|&i| program(i) && known(i))
        .or_else(|| (0..frames.len()).find(|&i| program(i)));
    if let Some(lead) = lead {
        let via = lead
            .checked_sub(1)
            .filter(|&i| tiers[i] == LabelTier::Library);
        return Some(LabelFrames { lead, via });
    }
    let lead = tiers
        .iter()
        .position(|t| *t == LabelTier::Library)
        .or_else(|| {
            frames
                .iter()
                .position(|f| f.class() != FrameClass::Allocator)
        })
        .unwrap_or(0);
    Some(LabelFrames { lead, via: None })
}

/// The index of the frame that names a stack for a user (the lead of [`label_frames`]).
pub fn label_frame_index<F: StackFrame>(frames: &[F]) -> Option<usize> {
    label_frames(frames).map(|l| l.lead)
}

/// The frame that names a stack for a user (see [`label_frames`]).
pub fn label_frame<F: StackFrame>(frames: &[F]) -> Option<&F> {
    frames.get(label_frame_index(frames)?)
}

/// How many leading (innermost) frames are plumbing, when some frame is not: the exports start
/// their stacks after them. 0 when every frame is plumbing (nothing better to show).
pub fn leading_plumbing<F: StackFrame>(frames: &[F]) -> usize {
    frames.iter().position(|f| !is_plumbing(f)).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn libc_is_glibc_or_musl_by_file_name() {
        assert!(is_libc("/usr/lib/x86_64-linux-gnu/libc.so.6"));
        assert!(is_libc("/lib/libc-2.31.so"));
        assert!(is_libc("/lib/ld-musl-x86_64.so.1"));
        assert!(is_libc("/usr/lib/libc.musl-x86_64.so.1"));
        assert!(!is_libc("/usr/lib/libcrypto.so.3"));
        assert!(!is_libc("/usr/lib/libcurl.so.4"));
        assert!(!is_libc("/lib64/ld-linux-x86-64.so.2"));
    }

    #[test]
    fn libc_and_the_loader_are_not_user_code() {
        for module in [
            "/usr/lib/x86_64-linux-gnu/libc.so.6",
            "/lib/libc-2.31.so",
            "/lib64/ld-linux-x86-64.so.2",
            "/lib/ld-2.31.so",
            "/usr/lib/libstdc++.so.6",
        ] {
            assert!(!module_class(module).is_user(), "{module}");
        }
        assert!(module_class("/usr/bin/leaky").is_user());
        assert!(module_class("/usr/lib/libcurl.so.4").is_user());
    }

    #[test]
    fn functions_decide_before_modules() {
        let cases = [
            (
                Some("operator new(unsigned long)"),
                Some("/usr/lib/libstdc++.so.6"),
                FrameClass::Allocator,
            ),
            (
                Some("CRYPTO_zalloc"),
                Some("/usr/lib/libcrypto.so.3"),
                FrameClass::Allocator,
            ),
            (
                Some("runtime.mallocgc"),
                Some("/usr/bin/goapp"),
                FrameClass::Allocator,
            ),
            (
                Some("runtime.systemstack"),
                Some("/usr/bin/goapp"),
                FrameClass::Runtime,
            ),
            (Some("strdup"), Some("/lib/libc.so.6"), FrameClass::Libc),
            (Some("remember"), Some("/usr/bin/app"), FrameClass::User),
            (None, None, FrameClass::User),
        ];
        for (function, module, class) in cases {
            assert_eq!(
                classify(function, module),
                class,
                "{function:?} in {module:?}"
            );
        }
    }

    #[test]
    fn user_frame_skips_libc() {
        let frames = [
            Frame {
                function: Some("strdup".into()),
                module: Some("/lib/libc.so.6".into()),
                ..Frame::default()
            },
            Frame {
                function: Some("remember".into()),
                module: Some("/usr/bin/app".into()),
                ..Frame::default()
            },
        ];
        assert_eq!(
            label_frame(&frames).and_then(|f| f.function.as_deref()),
            Some("remember")
        );
    }

    #[test]
    fn a_stack_is_named_by_its_first_user_frame() {
        let frame = |function: &str, module: &str| Frame {
            function: Some(function.into()),
            module: Some(module.into()),
            ..Frame::default()
        };
        let frames = [
            frame("malloc", "/lib/libc.so.6"),
            frame("_Znwm", "/usr/lib/libstdc++.so.6"),
            frame("remember", "/usr/bin/app"),
        ];
        assert_eq!(label_frame_index(&frames), Some(2));
        let unnamed_first = [
            Frame {
                module: Some("/lib/libfoo.so".into()),
                ..Frame::default()
            },
            frame("main", "/usr/bin/app"),
        ];
        assert_eq!(label_frame_index(&unnamed_first), Some(1));
        let only_libc = [frame("strdup", "/lib/libc.so.6")];
        assert_eq!(label_frame_index(&only_libc), Some(0));
        assert_eq!(label_frame_index::<Frame>(&[]), None);
    }
    fn named(function: &str, module: &str) -> Frame {
        Frame {
            function: Some(function.into()),
            module: Some(module.into()),
            ..Frame::default()
        }
    }

    const APP: &str = "/tmp/build/app";
    const LIBC: &str = "/usr/lib/x86_64-linux-gnu/libc.so.6";
    const CRYPTO: &str = "/usr/lib/x86_64-linux-gnu/libcrypto.so.3";
    const STDCXX: &str = "/usr/lib/x86_64-linux-gnu/libstdc++.so.6";

    #[test]
    fn every_listed_wrapper_is_plumbing() {
        let cases = [
            ("malloc", LIBC),
            ("_int_malloc", LIBC),
            ("sysmalloc", LIBC),
            ("tcache_init", LIBC),
            ("__libc_calloc", LIBC),
            ("CRYPTO_malloc", CRYPTO),
            ("CRYPTO_zalloc", CRYPTO),
            ("CRYPTO_memdup", CRYPTO),
            ("CRYPTO_realloc", CRYPTO),
            ("CRYPTO_strdup", CRYPTO),
            ("CRYPTO_strndup", CRYPTO),
            ("BUF_MEM_grow_clean", CRYPTO),
            ("g_malloc0", "/usr/lib/x86_64-linux-gnu/libglib-2.0.so.0"),
            ("g_realloc", "/usr/lib/x86_64-linux-gnu/libglib-2.0.so.0"),
            ("_Znwm", STDCXX),
            ("_Znam", STDCXX),
            ("_ZnwmSt11align_val_t", STDCXX),
            ("_ZnwmRKSt9nothrow_t", STDCXX),
            ("operator new(unsigned long)", STDCXX),
            ("xmalloc", APP),
            ("xcalloc", APP),
            ("xrealloc", APP),
            ("xstrdup", APP),
            ("je_malloc", "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2"),
            ("mallocx", APP),
            ("tc_malloc", APP),
            ("mi_malloc", APP),
            ("ngx_memalign", "/usr/sbin/nginx"),
            ("ngx_palloc_small", "/usr/sbin/nginx"),
            ("ngx_create_pool", "/usr/sbin/nginx"),
            ("zmalloc_usable", "/usr/bin/redis-server"),
            ("ztrymalloc_usable_internal", "/usr/bin/redis-server"),
            ("PyMem_Malloc", APP),
            ("_PyObject_Malloc", APP),
            ("_cgo_5f2c3d_Cfunc_malloc", APP),
            ("crosscall2", APP),
            ("runtime.asmcgocall", APP),
            ("runtime.asmcgocall.abi0", APP),
            ("runtime.cgocall", APP),
            ("main._Cfunc__CMalloc", APP),
            ("example.com/svc/store._Cfunc_strdup", APP),
            ("runtime.mallocgc", APP),
            ("runtime.mallocgcSmallNoscan", APP),
            ("runtime.newobject", APP),
            ("runtime.makeslice", APP),
            ("runtime.growslice", APP),
            ("runtime.makemap_small", APP),
            ("runtime.mapassign_faststr", APP),
            ("runtime.concatstrings", APP),
            ("runtime.rawstringtmp", APP),
            ("runtime.slicebytetostring", APP),
            ("runtime.systemstack", APP),
            ("runtime.(*mheap).alloc", APP),
            ("runtime.(*mcache).refill", APP),
            ("runtime.(*mcentral).grow", APP),
            ("runtime.sysMapOS", APP),
            ("runtime.persistentalloc", APP),
        ];
        for (function, module) in cases {
            assert!(
                is_plumbing(&named(function, module)),
                "{function} in {module}"
            );
        }
        for (function, module) in [
            ("X509_STORE_CTX_new", CRYPTO),
            ("strdup", LIBC),
            ("verify_request", APP),
            ("main.handle", APP),
            ("xmalloc_stats", APP),
        ] {
            assert!(
                !is_plumbing(&named(function, module)),
                "{function} in {module}"
            );
        }
    }

    #[test]
    fn system_libraries_are_shared_objects_in_system_directories() {
        assert!(is_system_library(CRYPTO));
        assert!(is_system_library("/lib/x86_64-linux-gnu/libssl.so.3"));
        assert!(is_system_library(
            "/usr/lib/nginx/modules/ngx_http_lua_module.so"
        ));
        assert!(!is_system_library("/usr/lib/postgresql/15/bin/postgres"));
        assert!(!is_system_library("/tmp/build/libleaky.so"));
        assert!(!is_system_library(APP));
    }

    #[test]
    fn a_label_leads_with_the_program_via_the_library_it_called() {
        let frames = [
            named("CRYPTO_zalloc", CRYPTO),
            named("X509_STORE_CTX_new", CRYPTO),
            named("verify_request", APP),
            named("main", APP),
        ];
        assert_eq!(
            label_frames(&frames),
            Some(LabelFrames {
                lead: 2,
                via: Some(1)
            })
        );
        // Deeper in the library: `via` is the API the program entered, not the innermost.
        let nginx = [
            named("CRYPTO_malloc", CRYPTO),
            named("X509_STORE_load_file_ex", CRYPTO),
            named(
                "SSL_CTX_load_verify_locations",
                "/usr/lib/x86_64-linux-gnu/libssl.so.3",
            ),
            named("ngx_ssl_trusted_certificate", "/usr/sbin/nginx"),
        ];
        assert_eq!(
            label_frames(&nginx),
            Some(LabelFrames {
                lead: 3,
                via: Some(2)
            })
        );
        // The program called the plumbing itself: nothing to say with `via`.
        let wrapped = [
            named("xmalloc", APP),
            named("remember", APP),
            named("main", APP),
        ];
        assert_eq!(
            label_frames(&wrapped),
            Some(LabelFrames { lead: 1, via: None })
        );
    }

    #[test]
    fn labels_fall_back_when_no_program_frame_is_left() {
        let library_only = [
            named("CRYPTO_zalloc", CRYPTO),
            named("OPENSSL_init", CRYPTO),
        ];
        assert_eq!(
            label_frames(&library_only),
            Some(LabelFrames { lead: 1, via: None })
        );
        let go_runtime = [
            named("runtime.mallocgc", APP),
            named("runtime.newobject", APP),
            named("runtime.gcBgMarkWorker", APP),
            named("runtime.goexit", APP),
        ];
        assert_eq!(label_frame_index(&go_runtime), Some(2));
        let allocator_only = [named("malloc", LIBC), named("_Znwm", STDCXX)];
        assert_eq!(label_frame_index(&allocator_only), Some(0));
        // A bare address is the last resort among program frames.
        let bare = [named("xmalloc", APP), Frame::default(), named("main", APP)];
        assert_eq!(label_frame_index(&bare), Some(2));
    }

    #[test]
    fn exports_drop_only_leading_plumbing() {
        let frames = [
            named("CRYPTO_zalloc", CRYPTO),
            named("X509_STORE_CTX_new", CRYPTO),
            named("xmalloc", APP),
            named("main", APP),
        ];
        assert_eq!(leading_plumbing(&frames), 1);
        assert_eq!(leading_plumbing(&[named("malloc", LIBC)]), 0);
        assert_eq!(leading_plumbing::<Frame>(&[]), 0);
    }
}
