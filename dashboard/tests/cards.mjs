// Finds card numbers a page must never show (the masking rule of issue 16): 13–19 digits passing
// the Luhn check, as one run or in groups joined by single spaces, `-` or `%20`. Any sequence of
// whole groups of a run is tried (so `2026-12-03 4111 1111 1111 1111` still finds the card), but
// never a slice inside a group (a 20-digit id is not a card because 16 of its digits pass Luhn).

export function luhn(d) {
  let sum = 0;
  for (let i = 0; i < d.length; i++) {
    let x = d.charCodeAt(d.length - 1 - i) - 48;
    if (i % 2 === 1) x = x * 2 > 9 ? x * 2 - 9 : x * 2;
    sum += x;
  }
  return sum % 10 === 0;
}

export function cardNumbers(text) {
  const found = [];
  for (const m of String(text).matchAll(/\d+(?:(?:[ -]|%20)\d+)*/g)) {
    const groups = m[0].split(/[ -]|%20/);
    for (let a = 0; a < groups.length; a++) {
      let digits = '';
      for (let b = a; b < groups.length; b++) {
        digits += groups[b];
        if (digits.length > 19) break;
        if (digits.length >= 13 && luhn(digits)) found.push(digits);
      }
    }
  }
  return found;
}
