"""NuGraph2 for liquid-argon TPC hits: events, graphs, model, losses, data, training."""
