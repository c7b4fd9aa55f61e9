//! Data sets: CSV, IDX and synthetic sources; splits and standardisation.
