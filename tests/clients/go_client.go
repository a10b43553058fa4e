// Go's net/http: pooled, and with Expect: 100-continue on the last call.
package main

import (
	"bytes"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"time"
)

func main() {
	url := os.Getenv("HOOK_URL")
	c := &http.Client{Timeout: 20 * time.Second, Transport: &http.Transport{
		ExpectContinueTimeout: 30 * time.Second, MaxIdleConnsPerHost: 1}}
	post := func(body []byte, expect bool) string {
		req, _ := http.NewRequest("POST", url, bytes.NewReader(body))
		if expect {
			req.Header.Set("Expect", "100-continue")
		}
		r, err := c.Do(req)
		if err != nil {
			return "error:" + strings.ReplaceAll(err.Error(), " ", "_")
		}
		io.Copy(io.Discard, r.Body)
		r.Body.Close()
		return fmt.Sprint(r.StatusCode)
	}
	fmt.Println(post(nil, false), post(bytes.Repeat([]byte("x"), 1<<20), false), post(nil, false),
		post(bytes.Repeat([]byte("x"), 2048), true))
}
