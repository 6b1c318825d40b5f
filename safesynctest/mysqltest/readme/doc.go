// Package readme holds the code of the repository's README: its tests
// compile and run the README's snippets, and fail when a snippet and this
// package's copy of it differ.
package readme
