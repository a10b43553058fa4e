//! deployhook: self-hosted deploy hooks. The command line lives in the library's `cli` module;
//! DESIGN.md holds the architecture.

fn main() -> std::process::ExitCode {
    deployhook::cli::main()
}

/// mimalloc instead of glibc's malloc: redb takes a 4 KiB buffer for every page a commit
/// writes, and glibc consolidates its fast bins on each such allocation (a fifth of the journal
/// writer's time under a trigger storm). Built without transparent huge pages, which would
/// hold whole 2 MiB pages per thread heap.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
