"""decoding: one engine for greedy, sampling, beam, speculative and parallel decoding."""
