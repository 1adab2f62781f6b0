//! Pure decision functions of the serving layer (no actors, no clocks, no I/O).
