//! The apimctl agent: converges one VM to the machine spec the controller streams to it.
