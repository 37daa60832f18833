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
}

impl Pattern {
    fn matches(self, name: &str) -> bool {
        match self {
            Pattern::Exact(exact) => name == exact,
            Pattern::Prefix(prefix) => name.starts_with(prefix),
            Pattern::PrefixContaining(prefix, inner) => name
                .strip_prefix(prefix)
                .is_some_and(|rest| rest.contains(inner)),
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
const FUNCTIONS: &[(Pattern, FrameClass)] = &[
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
    (Pattern::Prefix("operator new"), FrameClass::Allocator),
    (Pattern::Prefix("operator delete"), FrameClass::Allocator),
    (Pattern::Prefix("_Znw"), FrameClass::Allocator),
    (Pattern::Prefix("_Zna"), FrameClass::Allocator),
    (Pattern::Prefix("CRYPTO_malloc"), FrameClass::Allocator),
    (Pattern::Prefix("CRYPTO_zalloc"), FrameClass::Allocator),
    (Pattern::Prefix("CRYPTO_realloc"), FrameClass::Allocator),
    (Pattern::Prefix("g_malloc"), FrameClass::Allocator),
    (Pattern::Prefix("g_realloc"), FrameClass::Allocator),
    (Pattern::Exact("xmalloc"), FrameClass::Allocator),
    (Pattern::Exact("xcalloc"), FrameClass::Allocator),
    (Pattern::Exact("xrealloc"), FrameClass::Allocator),
    (Pattern::Exact("runtime.mallocgc"), FrameClass::Allocator),
    (Pattern::Exact("runtime.newobject"), FrameClass::Allocator),
    (Pattern::Exact("runtime.makeslice"), FrameClass::Allocator),
    (Pattern::Exact("runtime.growslice"), FrameClass::Allocator),
    (Pattern::Prefix("runtime."), FrameClass::Runtime),
    (Pattern::Prefix("_dl_"), FrameClass::Runtime),
    (Pattern::Prefix("__libc_start"), FrameClass::Runtime),
    (Pattern::Exact("_start"), FrameClass::Runtime),
    (Pattern::Prefix("std::__"), FrameClass::Runtime),
    (Pattern::Prefix("__gnu_cxx::"), FrameClass::Runtime),
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

/// The index of the frame that names a stack for a user: the innermost frame of user code
/// with a function name, else the innermost frame of user code, else the innermost frame.
/// `None` for an empty stack.
pub fn label_frame_index<F: StackFrame>(frames: &[F]) -> Option<usize> {
    let user = |f: &F| f.class().is_user();
    frames
        .iter()
        .position(|f| user(f) && f.function().is_some())
        .or_else(|| frames.iter().position(user))
        .or(if frames.is_empty() { None } else { Some(0) })
}

/// The frame that names a stack for a user (see [`label_frame_index`]).
pub fn label_frame<F: StackFrame>(frames: &[F]) -> Option<&F> {
    frames.get(label_frame_index(frames)?)
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
}
