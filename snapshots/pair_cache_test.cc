#include "snapshots/pair_cache.h"

#include <doctest.h>

#include <string>
#include <vector>

namespace tally::snap {
namespace {

std::string pair_key(int subject, int item) {
  std::string key = "subject-" + std::to_string(subject);
  key.push_back('\0');
  return key + "item-" + std::to_string(item);
}

TEST_CASE("the pair cache finds what it holds, and its records stay put as it grows") {
  PairCache cache;
  CHECK(cache.find(pair_key(1, 1)) == nullptr);
  // Enough pairs for many index doublings and arena chunks.
  constexpr int kSubjects = 20'000;
  std::vector<PairRecord*> inserted;
  for (int subject = 0; subject < kSubjects; subject++) {
    for (int item = 0; item < 3; item++) {
      const std::string key = pair_key(subject, item);
      REQUIRE(cache.find(key) == nullptr);
      PairSlot slot;
      slot.id = inserted.size() + 1;
      slot.balance = proj::Balance{subject, item};
      inserted.push_back(cache.insert(key, slot));
    }
  }
  CHECK(cache.size() == inserted.size());
  std::size_t index = 0;
  for (int subject = 0; subject < kSubjects; subject++) {
    for (int item = 0; item < 3; item++, index++) {
      const std::string key = pair_key(subject, item);
      PairRecord* found = cache.find(key);
      REQUIRE(found == inserted[index]);
      CHECK(found->key() == key);
      CHECK(found->slot.id == index + 1);
      CHECK(found->slot.balance == proj::Balance{subject, item});
    }
  }
  // A record is the pair's own slot: a change through it is what find sees.
  inserted[7]->slot.balance.available = -5;
  CHECK(cache.find(pair_key(2, 1))->slot.balance.available == -5);
}

TEST_CASE("the pair cache tells keys apart by every byte, the longest included") {
  PairCache cache;
  const std::string longest = std::string(255, 's') + '\0' + std::string(255, 'i');
  REQUIRE(longest.size() == PairCache::kKeyBytesMax);
  std::string almost = longest;
  almost.back() = 'j';
  const std::string prefix = longest.substr(0, 300);
  for (const std::string& key : {longest, almost, prefix}) {
    PairSlot slot;
    slot.id = key.size();
    cache.insert(key, slot);
  }
  // Long records fill chunks unevenly: the last one of a chunk moves to the next.
  for (int filler = 0; filler < 400; filler++) {
    cache.insert(std::string(400, 'f') + std::to_string(filler), PairSlot{});
  }
  REQUIRE(cache.find(longest) != nullptr);
  CHECK(cache.find(longest)->key() == longest);
  CHECK(cache.find(almost)->key() == almost);
  CHECK(cache.find(prefix)->slot.id == 300);
  CHECK(cache.find(longest.substr(0, 299)) == nullptr);
  CHECK(cache.find(std::string(400, 'f') + "399")->key().size() == 403);
}

TEST_CASE("a cleared pair cache holds nothing and fills again") {
  PairCache cache;
  for (int subject = 0; subject < 1000; subject++) cache.insert(pair_key(subject, 0), PairSlot{});
  cache.clear();
  CHECK(cache.size() == 0);
  CHECK(cache.find(pair_key(5, 0)) == nullptr);
  PairSlot slot;
  slot.id = 9;
  PairRecord* record = cache.insert(pair_key(5, 0), slot);
  CHECK(cache.size() == 1);
  CHECK(cache.find(pair_key(5, 0)) == record);
  CHECK(record->slot.id == 9);
}

}  // namespace
}  // namespace tally::snap
