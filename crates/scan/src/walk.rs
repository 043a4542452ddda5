//! Opening images, archives and filesystems, recursively, within limits.
//!
//! (Skeleton: the walker lands in the next commits.)
