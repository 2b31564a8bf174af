//! perfkit's parallel engine (skeleton; see issue 4).
