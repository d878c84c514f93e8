//! The apimctl controller.
