//! perfkit's profile viewer (skeleton; see issue 3).
