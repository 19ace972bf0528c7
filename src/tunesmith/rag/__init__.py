"""Retrieval: chunking, a dense (MiniLM) + BM25 index on disk, hybrid search, RAFT rows."""
