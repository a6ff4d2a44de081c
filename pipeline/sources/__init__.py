"""Sources -> candidates: URL lists, HTML crawls, Common Crawl WARC/WAT."""
