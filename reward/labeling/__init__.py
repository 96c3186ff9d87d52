"""Human preference labeling: a SQLite store of pairs and votes, a page to label them, export and agreement."""
