//! Service backends for circles (work in progress).
