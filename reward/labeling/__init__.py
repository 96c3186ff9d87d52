"""Human preference labeling: a SQLite store of pairs and votes, a web page to label them, export and agreement stats."""
