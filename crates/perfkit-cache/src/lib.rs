//! perfkit's cache engine (skeleton; see issue 5).
