// Search results from file:// : Sphinx's search page fetches each hit's page to show a summary under it,
// and a browser forbids fetch() between file:// URLs (a console error per hit). Opened from disk, the
// results list titles and section names only; served over http(s), it shows the summaries as usual.
if (window.location.protocol === "file:" && typeof DOCUMENTATION_OPTIONS !== "undefined") {
  DOCUMENTATION_OPTIONS.SHOW_SEARCH_SUMMARY = false;
}
