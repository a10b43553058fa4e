<?php
// PHP's curl on one handle; the last call sends Expect: 100-continue (as PHP's curl does by
// itself for larger bodies), and a missing 100 Continue would stall it past its timeout.
$url = getenv('HOOK_URL');
$ch = curl_init();
function post($ch, $url, $body, $expect = false) {
    curl_setopt_array($ch, [CURLOPT_URL => $url, CURLOPT_POST => true, CURLOPT_POSTFIELDS => $body,
        CURLOPT_RETURNTRANSFER => true, CURLOPT_TIMEOUT => 20, CURLOPT_EXPECT_100_TIMEOUT_MS => 30000,
        CURLOPT_HTTPHEADER => $expect ? ['Expect: 100-continue'] : ['Expect:']]);
    $r = curl_exec($ch);
    if ($r === false) return 'error:' . curl_errno($ch);
    return (string) curl_getinfo($ch, CURLINFO_RESPONSE_CODE);
}
echo implode(' ', [post($ch, $url, ''), post($ch, $url, str_repeat('x', 1048576)), post($ch, $url, ''),
    post($ch, $url, str_repeat('x', 2048), true)]), "\n";
