"""Production feedback: logged predictions that got a label, as a training table."""
