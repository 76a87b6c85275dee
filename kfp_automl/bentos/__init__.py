"""Where .bento archives come from and how a packaged model is scored in batch: lookup, fetch, scoring."""
