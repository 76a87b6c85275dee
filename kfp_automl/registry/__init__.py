"""The model registry: versions, stages (champion, challenger, archived), and where their archives live."""
