"""Treating every input as hostile: input limits and checks per container (`limits`, `hdf5`,
`zipcheck`, `jsonload`), printable names (`text`), and the disposable reader process (`guard`)."""
